"""Classifier-free guidance scale of flux-digits at full precision (does CFG help?).

DigitEval of the FP model on 30 evaluation prompts per category, 50 steps, for several guidance
scales (1.0 = no guidance, half the cost).

    python benchmarks/bench_guidance.py   # writes benchmarks/results/guidance.json
"""

from __future__ import annotations

import json
from pathlib import Path

from adatsq.eval import digiteval
from adatsq.pipeline import load_pipeline
from adatsq.zoo import scenes

SCALES = [1.0, 2.0, 3.0, 4.5]
OUT = Path(__file__).parent / "results" / "guidance.json"


def main(model: str = "flux-digits", per_category: int = 30) -> int:
    pipe = load_pipeline(model)
    batch = scenes.make_scenes(per_category, scenes.EVAL_SEED)
    prompts, specs = [s.prompt for s in batch], [s.spec for s in batch]
    rows = []
    for scale in SCALES:
        result = digiteval.evaluate(pipe.generate(prompts, seed=0, guidance_scale=scale), specs)
        rows.append({"guidance_scale": scale, "total": result.total, "total_se": result.total_se,
                     "categories": result.category_scores})
        print(rows[-1], flush=True)
    OUT.write_text(json.dumps({"model": model, "per_category": per_category, "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
