"""Images: decoding, the in-memory uint8 store, batch augmentation, input coercion."""
