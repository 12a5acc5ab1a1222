"""The Slack layer: a Bolt app over `knowledge`'s answer path."""
