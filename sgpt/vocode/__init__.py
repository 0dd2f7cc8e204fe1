"""Units back to speech (sgpt-vocode): the unit HiFi-GAN, its training, and vocoding."""
