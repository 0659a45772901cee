"""compose.yaml for the Docker runtime: read through the installed compose tool, mapped onto the Engine API."""
