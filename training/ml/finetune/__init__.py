"""LoRA finetuning of the diffusion model: `config` (its settings, torch-free), `data` (the records and the seeded
batch order), `losses` (image and prompt encoding, the per-sample diffusion loss, reward weights, the
reward-weighted and DPO objectives), `fresh_samples` (the parent's fresh samples scored by the reward model),
`loop` (the training loop), `checkpoints` (saving and exact resume). No Django here."""
