"""The policy: where shares are mounted and how. Its pipeline, one module per step:

    files, layers -> load (YAML with positions, schema) -> types.Policy -> compiled (JSON)

Where it comes from:
- files.py: the policy files (policy.yaml, then policy.d/*.yaml) and their size limit;
- layers.py: the layers in read order (image files, systemd credential, kernel command line,
  cloud-init's drop-in) and LoadedPolicy, a policy with the layers it was read from;
- cmdline.py: `vfs_agent.mount=` arguments of the kernel command line, parsed (no I/O);
- host.py: the host's layers (credential, command line) as sections, their problems warnings;
- cloud_config.py: cloud-init's data -> the text of the cloud-init drop-in (pure).

How a document is read:
- yaml_positions.py: YAML to plain data with the line and column of every node;
- schema.py: the pydantic models of the file format (and the JSON Schema);
- pydantic_compat.py: the only module that knows the pydantic major (1.10 or 2.x);
- messages.py: pydantic's errors worded by vfs-agent, at their line;
- document.py: one document's text -> a validated schema.PolicyFile, every problem at once;
- errors.py: PolicyProblem (file:line:col: field: message) and PolicyError.

What comes out:
- load.py: every layer read, checked (names, owner and mode, size, UTF-8) and merged into
  types.Policy; it only reads;
- types.py: the merged policy as plain data (no pydantic), and the merge and match rules;
- conflicts.py: rules that conflict whatever shares are attached (`policy check`);
- compiled.py: the merged policy as JSON for the boot-time generator and the reports,
  trusted only while it matches every layer; written only by compile_policy(), an explicit
  step of the commands that act on the policy.

While the compiled policy is fresh, the boot-time generator, the reports and the daemon import
none of the modules that need YAML or pydantic (yaml_positions, schema, pydantic_compat,
messages, document, load, host, conflicts, cloud_config).
"""
