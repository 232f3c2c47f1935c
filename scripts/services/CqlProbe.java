// Readiness probe for scripts/services.sh: one real CQL query. Run as a single-file program
// (java -cp 'cassandra/lib/*' CqlProbe.java HOST PORT) with the driver Cassandra brings.
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Session;

public class CqlProbe {
    public static void main(String[] args) {
        try (Cluster cluster = Cluster.builder()
                .addContactPoint(args[0])
                .withPort(Integer.parseInt(args[1]))
                .withoutJMXReporting()
                .withoutMetrics()
                .build();
             Session session = cluster.connect()) {
            String version = session.execute("SELECT release_version FROM system.local")
                .one()
                .getString(0);
            System.out.println(version);
        }
    }
}
