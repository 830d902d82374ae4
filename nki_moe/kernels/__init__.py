"""NKI kernels, one op family per module (versions ``<op>_v0 ... <op>_vN``); ``layouts`` holds their host-side
weight layouts and ``calibration/`` the cost model's re-creations of published kernels (not workbook kernels).

Kernel modules import only the NKI API (``nki``, ``nki.language``, ``nki.isa``). Importing this package
binds that API: the real Neuron SDK on a Trainium host, the ``nki_moe.sim`` emulator elsewhere
(``NKI_MOE_BACKEND=sim|neuron`` forces one).
"""

from nki_moe.sim import install as _install

BACKEND = _install()
