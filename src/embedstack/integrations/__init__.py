"""Framework integrations, each an optional extra never imported by the server:
`embedstack.integrations.langchain` (`pip install embedstack[langchain]`) and
`embedstack.integrations.llamaindex` (`pip install embedstack[llamaindex]`)."""
