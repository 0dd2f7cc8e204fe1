"""Units back to speech (sgpt-vocode): the unit HiFi-GAN and the unit Vocos, their training,
and vocoding."""
