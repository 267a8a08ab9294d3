"""Everything that talks to GitHub or builds what is sent there."""
