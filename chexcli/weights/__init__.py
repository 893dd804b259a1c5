"""Import of released weights into model bundles, kept apart from the model code.

- `archive`: zip safety checks and checkpoint loading that never runs pickled code
- `sources`: locating the checkpoint in a release zip, a run folder or a single file
- `derive`: the ChexConfig of a checkpoint from its tensor shapes and stored config
- `tokenizers`: finding and loading the CLIP and GPT-2 tokenizers
- `official`: `import_official` (the released ChEX checkpoint)
- `chexzero`: `import_chexzero` (CheXzero CLIP weights as an initial bundle)
- `info`: `bundle_info` (summary of a bundle without loading its tensors)
"""
