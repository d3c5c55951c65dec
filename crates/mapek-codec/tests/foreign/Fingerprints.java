// Prints, for each schema file named, the Parsing Canonical Form and its fingerprint as the
// Apache Avro Java library computes them (the reference implementation of the
// specification): `<file> <fingerprint, 16 hex digits> <canonical form>`.
import java.io.File;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

public class Fingerprints {
    public static void main(String[] files) throws Exception {
        for (String file : files) {
            Schema schema = new Schema.Parser().parse(new File(file));
            long fingerprint = SchemaNormalization.parsingFingerprint64(schema);
            System.out.printf("%s %016x %s%n", file, fingerprint,
                SchemaNormalization.toParsingForm(schema));
        }
    }
}
