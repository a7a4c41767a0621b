"""The model code shipped next to the weights (`save_pretrained` copies it for `trust_remote_code` users)."""
