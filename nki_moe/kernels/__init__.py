"""NKI kernels, one op family per module (versions ``<op>_v0 ... <op>_vN``)."""
