"""Where models and data come from: the zoo, factories, files, s3:// and the MLflow registry."""
