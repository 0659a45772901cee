"""``edgediff up``/``down``/``status``: the whole serving stack, supervised as local processes or Docker containers."""
