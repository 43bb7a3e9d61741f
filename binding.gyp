{
  "targets": [
    {
      "target_name": "custos_hash",
      "sources": ["native/hash.c"],
      "cflags": ["-O2"],
      "libraries": ["-ldl"]
    }
  ]
}
