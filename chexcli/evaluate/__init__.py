"""The nine ChEX evaluation tasks: inference, post-processing, tuning, metrics.

`tasks` (packaged task configs), `postprocess` (box operators),
`records` (the prediction-file schema: writing and checked reading),
`prompts` (prompt sets, cosine logits), `inference` (model -> records),
`scoring` (records + targets -> metric objects), `targets` (ground truth
from processed data), `tune` (optimize_inference), `report` (full-report
assembly), `runner` (`evaluate_task`: what `chex evaluate` calls).
"""
