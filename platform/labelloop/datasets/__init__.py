"""The freeze stage: labelled images -> a frozen, content-hashed dataset version with a
deterministic grouped split."""
