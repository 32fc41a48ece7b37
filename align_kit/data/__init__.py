"""Data: readers, instruction/preference formats, cleaning, dedup, decontamination, cards."""
