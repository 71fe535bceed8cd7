"""Emotic label vocabulary, in the canonical order used by published Emotic code."""

CATEGORIES = ("Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval",
              "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem", "Excitement",
              "Fatigue", "Fear", "Happiness", "Pain", "Peace", "Pleasure", "Sadness", "Sensitivity", "Suffering",
              "Surprise", "Sympathy", "Yearning")
CONTINUOUS = ("Valence", "Arousal", "Dominance")
CATEGORY_INDEX = {name: i for i, name in enumerate(CATEGORIES)}
