"""Protocol definitions of the services (``edgediff/v1/generator.proto``) and their generated Python code."""
