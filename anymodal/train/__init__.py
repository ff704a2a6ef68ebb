"""Training on Lightning: a thin LightningModule, a LightningDataModule and the CLI."""
