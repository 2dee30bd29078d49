"""The commands a person runs: submit and validate, cancel and retry, status, config, doctor, models, demo, agent."""
