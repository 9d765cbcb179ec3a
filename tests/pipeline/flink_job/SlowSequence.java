// A small Flink batch job for tests/pipeline/test_flink.py: the numbers 1..N, each held for a
// few milliseconds (so the job is still running when the test kills a TaskManager), written
// as text lines into one file per parallel subtask. A restarted subtask rewrites its file,
// so after any number of restarts the files hold each number exactly once.
//
//   flink run -p 2 -c SlowSequence slow-sequence.jar N MILLISECONDS_PER_NUMBER OUTPUT_DIR

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.core.fs.FileSystem.WriteMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

public class SlowSequence {
    public static void main(String[] args) throws Exception {
        long count = Long.parseLong(args[0]);
        long millis = Long.parseLong(args[1]);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setRuntimeMode(RuntimeExecutionMode.BATCH);
        env.fromSequence(1, count)
                .map(n -> {
                    Thread.sleep(millis);
                    return n;
                })
                .returns(Types.LONG)
                .writeAsText(args[2], WriteMode.OVERWRITE);
        env.execute("slow-sequence");
    }
}
