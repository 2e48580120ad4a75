"""What a job leaves behind: candidate results, MLflow tracking and S3 storage."""
