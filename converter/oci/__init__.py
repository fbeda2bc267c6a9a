"""OCI/Docker image data: media types, the manifest/index model and pure rewrite rules."""
