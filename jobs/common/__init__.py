"""Small helpers shared by every stage: config base, hashing, atomic files, logging."""
