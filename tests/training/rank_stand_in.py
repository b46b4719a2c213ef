"""A rank that does nothing but live: started N times by `accelerate launch --multi_gpu` (torchrun
puts each in a session of its own), it writes its pid to DIR/rank-<RANK>.pid and sleeps."""

import os
import sys
import time
from pathlib import Path

Path(sys.argv[1], f"rank-{os.environ['RANK']}.pid").write_text(str(os.getpid()))
time.sleep(600)
