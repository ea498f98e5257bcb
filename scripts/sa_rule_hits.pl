#!/usr/bin/perl
# Prints the SpamAssassin rules (sub-rules included) each message hits, one JSON object per
# line: {"file": ..., "hits": [...], "score": ...}. The settings are those of
# `spamassassin -L -t` with Bayes off: local tests only, no Bayes, no auto-welcomelist; the
# ruleset is the one the spamassassin command uses (Debian: /usr/share/spamassassin and
# /etc/spamassassin). Loading the rules once and checking every message with the same object
# is what `spamassassin` does per message, without paying rule compilation per file.
#
#   scripts/sa_rule_hits.pl [--site DIR] FILE...
#
# `--site DIR` reads the site configuration (`.pre` and `.cf` files, `local.cf`) from DIR
# instead of /etc/spamassassin, as `spamassassin --siteconfigpath DIR` does: a copy of it with
# scores for rules the ruleset scores 0 makes those run.
use strict;
use warnings;
use Mail::SpamAssassin;
use Mail::SpamAssassin::Plugin::Check;
use JSON::PP;

# A rule holding a capture template (`%{NAME}`) has its pattern rebuilt per message with the
# tag's values, but Plugin::Check matches it with `/o`, which compiles an interpolated pattern
# once per process: a process checking several messages keeps the first message's pattern for
# all of them. The `spamassassin` command checks one message per process, so each gets its own;
# with the `/o` taken off those rules (and only those), this script does the same.
{
    no warnings 'redefine';
    my $add = \&Mail::SpamAssassin::Plugin::Check::add_evalstr;
    *Mail::SpamAssassin::Plugin::Check::add_evalstr = sub {
        my ($self, $pms, $str) = @_;
        if (defined $str && index($str, 'capture_template_rules') >= 0) {
            $str =~ s{/\$test_qr/(g?)op}{/\$test_qr/$1p}g;
        }
        return $add->($self, $pms, $str);
    };
}

my $site;
if (@ARGV >= 2 && $ARGV[0] eq '--site') {
    (undef, $site) = splice(@ARGV, 0, 2);
}
my $sa = Mail::SpamAssassin->new({
    (defined $site ? (site_rules_filename => $site) : ()),
    local_tests_only => 1,
    dont_copy_prefs => 1,
    userprefs_filename => '/dev/null',
    post_config_text => "use_bayes 0\nuse_auto_whitelist 0\nuse_auto_welcomelist 0\nbayes_auto_learn 0\n",
});
$sa->init(1);
my $json = JSON::PP->new->canonical;
my @files = @ARGV;
if (!@files) { chomp(@files = <STDIN>); }
for my $f (@files) {
    open(my $fh, '<', $f) or do { warn "$f: $!\n"; next };
    my @lines = <$fh>;
    close $fh;
    my $msg = $sa->parse(\@lines);
    my $st = $sa->check($msg);
    my @hits = (split(/,/, $st->get_names_of_tests_hit), split(/,/, $st->get_names_of_subtests_hit));
    print $json->encode({file => $f, hits => [sort grep { $_ ne '' } @hits], score => $st->get_score + 0}), "\n";
    $st->finish;
    $msg->finish;
}
