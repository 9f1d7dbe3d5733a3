"""The reward model trained on the readers' feedback: `config` (its settings, torch-free), `model` (the network and
scoring), `data` (feedback records and their tensors), `train` (the training loop), `check` (the cross-fitted test
that it ranks synthetic images as the readers did, before anything uses it). No Django here."""
