"""Training a card's network on catalog datasets (seeded, resumable) to produce the shipped weights."""
