"""Running rpmetric in a fresh process, so environment variables such as HF_HOME take effect."""

import os
import subprocess
import sys


def run_cli(args, env=None, timeout=300):
    """Run `python -m rpmetric ARGS` in a fresh process (fresh huggingface_hub constants)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "rpmetric", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
