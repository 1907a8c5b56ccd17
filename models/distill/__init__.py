"""Distillation: training data from logged teacher outputs, student fine-tuning, augmentation.

- `dataset_builder`: logged starts/exports (or the bundled dataset) -> seeded train/test split.
- `train`: fine-tune a seq2seq (full) or causal (LoRA) student on the paper's student prompts.
- `augment`: mistake-driven augmentation with an LLM writing similar intents (paper section 3.4).
- `lowdata`: the shape of the paper's Table 3 (train subsets with and without augmentation).
- `demo_student`: the small from-scratch student the demo trains once and caches.

Nothing here imports `analysis` or `abtest`: scoring and mistake detection are passed in.
"""
