"""ember's graph IR. Importing it registers every operator (each ops_*.py module registers its own)."""
from . import ops  # noqa: F401
from . import ops_fused  # noqa: F401
from . import ops_quant  # noqa: F401
from . import ops_moe  # noqa: F401
from . import ops_collective  # noqa: F401
