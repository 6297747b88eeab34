"""Fault injection for sweep tests: jobs that die the way an OOM-killed or preempted job does."""

import os
import signal

from llmcompressor.modifiers.quantization import GPTQModifier


class KilledMidQuantization(GPTQModifier):
    """llm-compressor's GPTQ that SIGKILLs its process mid-compression (after the dense evaluation, the pruning
    and the calibration pass, as the first layer's weights are being quantized), once: the kill leaves the file
    named by $JCEXP_FAULT_ONCE behind, and a rerun that finds it runs the stock GPTQ, like a retried job."""

    def compress_module_list(self, module_list):
        marker = os.environ.get("JCEXP_FAULT_ONCE")
        if not marker or not os.path.exists(marker):
            if marker:
                open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().compress_module_list(module_list)
