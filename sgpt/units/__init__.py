"""Speech to units (sgpt-units): dense encoders, k-means, and the encoder that composes them."""
