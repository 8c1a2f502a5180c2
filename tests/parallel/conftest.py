import sys
from pathlib import Path

# two_ranks.py serves the tests and their worker scripts alike; see its docstring
sys.path.insert(0, str(Path(__file__).parent))
