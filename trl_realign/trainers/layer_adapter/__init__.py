"""
The layer adapter's trainers (arXiv 2506.12704, §3.3): only the inserted bottom layer(s) train, with SFT, DPO, TrRa or
on-policy TrRa, and what they share: the options (`arguments`), model preparation (`preparation`), LoRA on the adapter
(`lora`), the bypassed reference A (`reference`), the adapter as a realignment student (`realign`) and saving
(`saving`). The trainers and configs are exported from `trl_realign.trainers` (and `trl_realign`); this package
imports nothing itself, so that `trainers.trra_trainer` can use `reference` without a cycle.
"""
