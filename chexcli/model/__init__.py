"""ChEX model components: CLIP towers, detector, post decoder, sentence generator and tokenizers."""
