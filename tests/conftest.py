import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/support as the package "support"
