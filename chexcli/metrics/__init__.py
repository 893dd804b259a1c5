"""Evaluation metrics of the nine ChEX tasks and their bootstrapping.

Every metric group is a small class built once from the per-unit data of a
task (an image, a GT box, a report) that can be computed on any multiset of
units: `compute(idx)` with `idx` an int array of unit indices (duplicates are
distinct units). `bootstrap.bootstrap` draws the reference's replicates and
feeds them to `compute`, so the expensive per-unit work (box matching, mask
rasterisation, CheXbert labelling) is done once.

Modules: `boxes` (box formats, IoU), `detection` (reference box AP),
`coco` (pycocotools AP), `grounding` (mask IoU), `classification`
(AUROC/F1/MCC), `text` (BLEU/ROUGE-L/METEOR/CIDEr-D), `chexbert`
(clinical efficacy), `bootstrap`.
"""
