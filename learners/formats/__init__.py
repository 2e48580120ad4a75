"""Model file formats, below every learner that writes them: ONNX export and the one
onnxruntime session factory, the packed container, bit-packing and Huffman coding."""
