"""The typed training configuration and its YAML, config fields that are node parameters, run
directories and where pretrained encoder weights come from. May import common and messages."""
