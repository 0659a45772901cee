"""The child process of ``prepare.prepare_in_subprocess``: load the full model, build a variant's artifacts, exit.

Prints one JSON summary line on stdout; errors meant for the user print one line on stderr and exit 2::

    python -m edgediff.artifacts.prepare_worker --model celebahq-256 --variant openvino-int8 --deepcache 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from edgediff.errors import EdgediffError
from edgediff.models import get_preset, load_components
from edgediff.variants import BuildOptions, get_variant


def main(argv: Sequence[str] | None = None) -> int:
    """Build the variant's artifacts (loading the full model) and print a JSON summary line."""
    parser = argparse.ArgumentParser(prog="python -m edgediff.artifacts.prepare_worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--weights-seed", type=int, default=0)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--deepcache", type=int, default=1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        components = load_components(get_preset(args.model), args.weights, seed=args.weights_seed, warn=False)
        variant = get_variant(args.variant)
        artifacts = variant.prepare(components, BuildOptions(deepcache_interval=args.deepcache))
    except EdgediffError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"variant": args.variant, "fingerprint": components.fingerprint(), "artifacts": artifacts,
                      "prepare_s": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
