"""STaR self-training: the pieces of the generate / filter / rationalize / fine-tune loop."""
