"""Every process a command starts ends with it: signals, children, temporary files, partial reports (issue 23)."""
