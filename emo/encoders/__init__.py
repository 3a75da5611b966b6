"""Adapters of the frozen encoder libraries that both stages need (extraction runs them on frames;
heads rebuild a frozen text tower named by a feature set's provenance). Each third-party model
library is imported by one file here or in ``emo.extract`` only."""
