"""The one training loop both training stages configure (`loop`), and its data-parallel ranks (`ranks`)."""
