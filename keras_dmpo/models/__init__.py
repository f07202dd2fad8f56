"""Models: stage splitting of keras-hub ViTs and the DMPO classifier."""
