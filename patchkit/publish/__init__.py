"""Publishing: push an apply output to the Hugging Face Hub in one verified commit (or pull request), pull a
published fix back and check it against its provenance, and render the model card.
"""
