FROM webslm-toolchain-stage:fetch-747085adb007
RUN python3 -m venv /opt/venv && /opt/venv/bin/python3 /opt/webslm/scripts/compile_bytecode.py /opt/venv \
 && printf '#!/opt/venv/bin/python3\nimport sys\nimport pip._internal.commands.install, pip._internal.network.session, pip._vendor.rich.console\nprint(sys.argv)\n' > /opt/venv/bin/mlc_llm && chmod 755 /opt/venv/bin/mlc_llm
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1
