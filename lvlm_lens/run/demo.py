"""``make demo``: the main job end to end on a CPU in a few minutes.

Runs ``lvlm-lens attribute`` on the bundled trained toy LVLM when this version ships it;
otherwise on a tiny *random* LLaVA-1.5-shaped checkpoint built offline (a random model has no
circuits to find, so its attributions only show that the pipeline runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lvlm_lens.run.cli import main as cli
from lvlm_lens.run.job import default_model_path


def main(out: str = "runs/demo") -> int:
    """Run the demo; returns the CLI's exit code."""
    args = ["attribute", "--out", out]
    try:
        default_model_path()
    except ValueError:
        from lvlm_lens.testing.tiny import build_tiny_checkpoint

        folder = Path(out + "-model")
        if not (folder / "config.json").exists():
            build_tiny_checkpoint("llava-llama", folder, num_hidden_layers=4)
        print(f"No trained toy LVLM ships with this version: demo on a tiny random model "
              f"({folder}); its attributions only show that the pipeline runs.")
        args += ["--model", str(folder), "--keep-wrong", "--num-masks", "400"]
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
